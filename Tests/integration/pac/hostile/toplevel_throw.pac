// expect: exception "configuration server unreachable"
// The script throws while it loads, before FindProxyForURL is ever called.
var config = null;
if (config === null) {
    throw new Error("configuration server unreachable");
}

function FindProxyForURL(url, host) {
    return "DIRECT";
}
