"""Examples of extending hiper from outside its stages (an own env, its prompt family)."""
