"""Soak and chaos: the whole split deployment under load and kill -9, checked afterwards.

`python -m bench.soak` (`make soak`) runs one session (`session`): the deployment
(`deployment`), load drivers in their own processes (`driver`, values from `workload`, jobs
served by `jobfuncs`), a seeded fault schedule (`faults`), then the checker over the
recorded histories (`checker`) and the report (`report`, `plot`) in `build/soak/`.
"""
