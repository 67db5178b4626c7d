"""The order pages: list, detail, create, operator actions (staff) and the customer's status page.

Views are thin: parse the input, check the permission, call one selector or service, render.
"""
