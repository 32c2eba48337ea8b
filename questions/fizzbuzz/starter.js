function fizzBuzz(n) {
  // Return ["1", "2", "Fizz", ...] for the numbers 1 to n.
  return null;
}
