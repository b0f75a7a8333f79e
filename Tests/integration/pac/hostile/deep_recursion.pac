// expect: stack overflow
// Unbounded recursion: the engine's call stack limit turns it into a RangeError.
function depth(n) {
    return depth(n + 1) + 1;
}

function FindProxyForURL(url, host) {
    return "PROXY proxy" + depth(0) + ".example.com:3128";
}
