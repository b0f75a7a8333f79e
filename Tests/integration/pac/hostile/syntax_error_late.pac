// expect: syntax error at line 8, column 38
// A stray ")" deep in an otherwise ordinary file.
var INTERNAL = ".corp.example";

function FindProxyForURL(url, host) {
    if (dnsDomainIs(host, INTERNAL)) {
        return "DIRECT";
    } else if (isPlainHostName(host))) {
        return "DIRECT";
    }
    return "PROXY proxy.corp.example:3128";
}
