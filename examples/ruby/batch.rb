# Sends a batch pipelined on one connection: every line written at once,
# then one answer a line, in order. Ruby's standard library only.
require "json"
require "socket"

# As ffclient finds it: $FFD_SOCKET, else your user's ffd, else the system's.
def ffd_socket
  return ENV["FFD_SOCKET"] unless ENV["FFD_SOCKET"].to_s.empty?
  runtime = ENV["XDG_RUNTIME_DIR"].to_s
  if runtime.empty?
    tmp = ENV["TMPDIR"].to_s.empty? ? "/tmp" : ENV["TMPDIR"]
    runtime = "#{tmp}/ffd-#{Process.euid}"
  end
  user, system = File.join(runtime, "ffd.sock"), "/run/ffd/ffd.sock"
  return system if Process.euid.zero? || (!File.exist?(user) && File.exist?(system))
  user
end

requests = [42, 43, 44].map do |user|
  { url: "http://127.0.0.1:8080/hook?src=readme", headers: { "x-event" => "signup" }, json: { user: user } }
end

refused = false
UNIXSocket.open(ffd_socket) do |ffd|
  ffd.write(requests.map { |r| JSON.generate(r) + "\n" }.join)
  requests.each_index do |i|
    answer = JSON.parse(ffd.gets)
    if answer["ok"]
      puts answer["id"]
    else
      warn "ffd refused request #{i}: #{answer["error"]}: #{answer["message"]}"
      refused = true
    end
  end
end
exit 3 if refused
