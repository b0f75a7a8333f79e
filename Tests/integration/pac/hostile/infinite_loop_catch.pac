// expect: time limit
// An endless loop that catches every error and ignores "finally" exits: a time limit that is
// an ordinary, catchable JavaScript error never stops it.
function FindProxyForURL(url, host) {
    for (;;) {
        try {
            try {
                while (true) {
                }
            } catch (e) {
                // swallowed
            } finally {
                continue;
            }
        } catch (e2) {
            // swallowed too
        }
    }
}
