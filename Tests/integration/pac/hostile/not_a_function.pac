// expect: missing FindProxyForURL
// FindProxyForURL exists but is a string, not a function.
var FindProxyForURL = "PROXY proxy.example.com:3128";
