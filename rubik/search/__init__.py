"""The Model Rubik's Cube search: Optuna studies of (resolution, depth, width) at fixed budgets, their
Pareto front, and tiny formulas fitted on it. Imports train, cube and models; nothing imports it."""
