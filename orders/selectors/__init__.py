"""Reads of the domain, by concern. They return querysets and dataclasses; how a thing is
worded or coloured on a page is the page's business (ops' presenters and template tags
for staff, orders.presenters for the customer's page).

- timeline: an order's saga, folded into one track per step and one per compensation
- ledger: an order with its lines, ledgers, follow-ups, commands and timeline
- customer: what the customer may know of their order
- catalog: products for sale

Every selector runs a fixed number of queries whatever the number of rows, events or
lines; the page tests hold them to it.
"""
