<?php
// Sends one request to ffd and prints the id it answers: the page's process
// may answer and exit at once, ffd delivers after it. PHP's standard library only.

// As ffclient finds it: $FFD_SOCKET, else your user's ffd, else the system's.
function ffd_socket(): string
{
    if (getenv('FFD_SOCKET')) {
        return getenv('FFD_SOCKET');
    }
    $runtime = getenv('XDG_RUNTIME_DIR') ?: (getenv('TMPDIR') ?: '/tmp') . '/ffd-' . posix_geteuid();
    $user = "$runtime/ffd.sock";
    $system = '/run/ffd/ffd.sock';
    if (posix_geteuid() === 0 || (!file_exists($user) && file_exists($system))) {
        return $system;
    }
    return $user;
}

$request = [
    'url' => 'http://127.0.0.1:8080/hook?src=readme',
    'headers' => ['x-event' => 'signup'],
    'json' => ['user' => 42],
];

$ffd = stream_socket_client('unix://' . ffd_socket(), $errno, $errstr, 5);
if ($ffd === false) {
    fwrite(STDERR, "ffd unreachable: $errstr\n");
    exit(4);
}
fwrite($ffd, json_encode($request, JSON_UNESCAPED_SLASHES) . "\n");
$answer = json_decode(fgets($ffd), true);
fclose($ffd);
if (!$answer['ok']) {
    fwrite(STDERR, "ffd refused: {$answer['error']}: {$answer['message']}\n");
    exit(3);
}
echo $answer['id'], "\n";
