def fizz_buzz(n: int) -> list[str]:
    # Return ["1", "2", "Fizz", ...] for the numbers 1 to n.
    pass
