"""The randomized history test's parts: worker processes, fault injectors, the run, and the checker."""
