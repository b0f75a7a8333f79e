// expect: non-string result
// FindProxyForURL returns null. Chromium treats it as a failure, not as DIRECT.
function FindProxyForURL(url, host) {
    return null;
}
