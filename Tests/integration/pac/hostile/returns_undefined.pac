// expect: non-string result
// FindProxyForURL falls off its end: the result is undefined.
function FindProxyForURL(url, host) {
    if (host == "never.example.com") {
        return "DIRECT";
    }
}
