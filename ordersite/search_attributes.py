"""The custom Temporal search attributes every saga sets: the one list of them.

Read by three things, so keep this file free of imports and keep the entries as plain
`"Name": "Type"` string pairs:
- the workflow code (import it as usual);
- scripts/run_dev.py, which loads this file by path and hands each pair to the
  `temporal` line of Procfile.dev as `start-dev --search-attribute Name=Type`;
- scripts/register_search_attributes.sh (the docker-compose one-shot job and the dev
  launcher when it reuses a server), which picks the pairs out of this file with grep.

Types are Temporal's: Text, Keyword, Int, Double, Bool, Datetime, KeywordList.
"""

SEARCH_ATTRIBUTES = {
    "OrderId": "Int",
    "CustomerId": "Keyword",
    "OrderAmount": "Double",
    "SagaStatus": "Keyword",
    "CurrentStep": "Keyword",
}
