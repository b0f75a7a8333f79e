// expect: time limit
// The script never finishes loading: the loop is at the top level, outside FindProxyForURL.
var ready = false;
while (!ready) {
}

function FindProxyForURL(url, host) {
    return "DIRECT";
}
