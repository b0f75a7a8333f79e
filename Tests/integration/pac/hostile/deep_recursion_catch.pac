// expect: time limit
// Recursion that catches its own stack overflow and recurses again: it never ends, so only a
// time limit stops it.
function again() {
    try {
        return again();
    } catch (e) {
        return again();
    }
}

function FindProxyForURL(url, host) {
    return again();
}
