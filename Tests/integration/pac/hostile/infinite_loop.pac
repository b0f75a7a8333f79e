// expect: time limit
// FindProxyForURL never returns.
function FindProxyForURL(url, host) {
    while (true) {
    }
}
