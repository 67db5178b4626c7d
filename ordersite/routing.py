# Websocket routes; the staff and customer consumers are added with the dashboard.
websocket_urlpatterns: list = []
