// Sends one request to ffd and prints the id it answers. Node's standard library only.
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

const request = {
  url: "http://127.0.0.1:8080/hook?src=readme",
  headers: { "x-event": "signup" },
  json: { user: 42 },
};

const sock = net.createConnection(ffdSocket(), () => sock.write(JSON.stringify(request) + "\n"));
sock.on("error", (e) => {
  console.error(`ffd unreachable: ${e.message}`);
  process.exitCode = 4;
});
readline.createInterface({ input: sock }).once("line", (line) => {
  const answer = JSON.parse(line);
  sock.end();
  if (!answer.ok) {
    console.error(`ffd refused: ${answer.error}: ${answer.message}`);
    process.exitCode = 3;
  } else {
    console.log(answer.id);
  }
});
