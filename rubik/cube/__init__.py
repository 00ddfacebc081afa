"""The model Rubik's cube: giant and tiny formulas, and twisting a base model to a budget."""
