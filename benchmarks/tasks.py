"""The task the benchmarks queue: next to nothing, so that the numbers are the queue's own."""


def noop(number: int) -> int:
    return number
