// Sends a batch pipelined on one connection: every line written at once,
// then one answer a line, in order. Node's standard library only.
const fs = require("fs");
const net = require("net");
const path = require("path");
const readline = require("readline");

// As ffclient finds it: $FFD_SOCKET, else your user's ffd, else the system's.
function ffdSocket() {
  if (process.env.FFD_SOCKET) return process.env.FFD_SOCKET;
  const runtime =
    process.env.XDG_RUNTIME_DIR || `${process.env.TMPDIR || "/tmp"}/ffd-${process.geteuid()}`;
  const user = path.join(runtime, "ffd.sock");
  const system = "/run/ffd/ffd.sock";
  if (process.geteuid() === 0 || (!fs.existsSync(user) && fs.existsSync(system))) return system;
  return user;
}

const requests = [42, 43, 44].map((user) => ({
  url: "http://127.0.0.1:8080/hook?src=readme",
  headers: { "x-event": "signup" },
  json: { user },
}));

const sock = net.createConnection(ffdSocket(), () =>
  sock.write(requests.map((r) => JSON.stringify(r) + "\n").join("")),
);
sock.on("error", (e) => {
  console.error(`ffd unreachable: ${e.message}`);
  process.exitCode = 4;
});
let answered = 0;
readline.createInterface({ input: sock }).on("line", (line) => {
  const answer = JSON.parse(line);
  if (answer.ok) {
    console.log(answer.id);
  } else {
    console.error(`ffd refused request ${answered}: ${answer.error}: ${answer.message}`);
    process.exitCode = 3;
  }
  if (++answered === requests.length) sock.end();
});
