// expect: non-string result
// FindProxyForURL returns an object (whose toString would give a PAC string: still not a string).
function FindProxyForURL(url, host) {
    return { proxy: "proxy.example.com:3128", toString: function () { return "PROXY proxy.example.com:3128"; } };
}
