"""The staff order pages: the list, creating an order, an order's detail with its live saga
timeline, and the operator action endpoint; their forms, selectors, presenters, sockets
(consumers) and urls.

The URL namespace stays `orders` (orders:list, orders:detail, orders:action, ...), mounted
at /orders/, and the templates stay under templates/orders/: what the pages are about has
not changed, only which app serves them (ops, since only staff reach them).
"""
