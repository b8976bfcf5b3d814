from flask import Flask, request

app = Flask(__name__)

# meca-node waits for this line, then retries the first request until the port answers
print("meca-init-done", flush=True)


@app.route("/", methods=["POST"])
def entry():
    return request.json["input"]
