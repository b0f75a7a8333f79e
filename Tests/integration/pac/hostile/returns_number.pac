// expect: non-string result
// FindProxyForURL returns a number.
function FindProxyForURL(url, host) {
    return 3128;
}
