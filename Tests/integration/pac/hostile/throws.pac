// expect: exception "proxy table is broken"
// FindProxyForURL throws an Error.
function FindProxyForURL(url, host) {
    if (host.length > 0) {
        throw new Error("proxy table is broken");
    }
    return "DIRECT";
}
