function fizzBuzz(n) {
  const word = (i) => (i % 3 === 0 ? "Fizz" : "") + (i % 5 === 0 ? "Buzz" : "") || String(i);
  return Array.from({ length: n }, (_, index) => word(index + 1));
}
