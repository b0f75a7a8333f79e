// expect: syntax error at line 3, column 9
function FindProxyForURL(url, host) {
    var = "DIRECT";
    return "PROXY proxy.example.com:3128";
}
