"""The charts staff look at rather than read: the dashboard's (selectors.py: data, one or
two grouped queries each) and the order page's saga waterfall (orders/selectors/waterfall.py),
drawn as SVG from templates (templates/ops/charts/) with geometry from geometry.py and
wording from presenters.py."""
