def fizz_buzz(n: int) -> list[str]:
    def word(i: int) -> str:
        text = ("Fizz" if i % 3 == 0 else "") + ("Buzz" if i % 5 == 0 else "")
        return text or str(i)

    return [word(i) for i in range(1, n + 1)]
