"""Scoring a supernet under many weight settings, shared by the search optimizers and the selectors: the evaluator
(exact reuse, stacking), the Shapley game and its estimate, where independent evaluations run (workers), cost."""
