// expect: memory limit
// Doubles a string 30 times: 2^30 characters, 1 GiB (and the previous half besides).
function FindProxyForURL(url, host) {
    var s = "x";
    for (var i = 0; i < 30; i++) {
        s = s + s;
    }
    return s.length > 0 ? "DIRECT" : "PROXY never.example.com:3128";
}
