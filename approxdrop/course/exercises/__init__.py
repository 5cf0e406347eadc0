"""Exercise specs and checkers, one module per lab (labNN.py); reference solutions live in labs/solutions/."""
