"""Views of the order pages. Thin: parse the input, check the permission, call one
selector or service, present, render."""
