"""Call the `add` task through the broker and print its result."""

from tasks import add

print(add.delay(2, 3).get(timeout=30))
