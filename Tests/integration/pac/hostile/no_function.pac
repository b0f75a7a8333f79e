// expect: missing FindProxyForURL
// The entry point is misspelt (names are case-sensitive): there is no FindProxyForURL.
function findProxyForUrl(url, host) {
    return "DIRECT";
}
