// expect: time or memory limit
// Doubles a string until allocation fails, catches the failure and starts again, for ever.
function FindProxyForURL(url, host) {
    var s = "x";
    for (;;) {
        try {
            s = s + s;
        } catch (e) {
            s = "x";
        }
    }
}
