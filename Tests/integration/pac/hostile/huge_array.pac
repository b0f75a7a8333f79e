// expect: memory limit
// Doubles an array 30 times: 2^30 elements, several GiB in any engine.
function FindProxyForURL(url, host) {
    var a = [0];
    for (var i = 0; i < 30; i++) {
        a = a.concat(a);
    }
    return a.length > 0 ? "DIRECT" : "PROXY never.example.com:3128";
}
