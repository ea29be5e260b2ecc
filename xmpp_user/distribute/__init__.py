"""Distribution: how many users each generator process can hold, and users dispatched within it.

- ``budget``: a process's connection budget from this machine's limits (no Locust).
- ``dispatch``: the budgets travel from the workers to the master, which dispatches users within
  them and refuses, before the run, a run that cannot fit.
"""
