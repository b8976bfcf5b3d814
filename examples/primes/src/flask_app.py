from flask import Flask, request

app = Flask(__name__)
print("meca-init-done", flush=True)


def count_primes(limit):
    """Sieve of Eratosthenes: how many primes are below limit."""
    if limit < 3:
        return 0
    sieve = bytearray([1]) * limit
    sieve[0:2] = bytes(2)
    for i in range(2, int(limit ** 0.5) + 1):
        if sieve[i]:
            sieve[i * i::i] = bytearray(len(range(i * i, limit, i)))
    return sum(sieve)


@app.route("/", methods=["POST"])
def entry():
    limit = int(request.json["limit"])
    if not 0 <= limit <= 50_000_000:
        return "limit must be between 0 and 50000000", 400
    return str(count_primes(limit))
