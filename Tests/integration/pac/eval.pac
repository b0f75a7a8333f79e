// Test PAC for helper_cases.tsv: evaluates the JavaScript expression carried, percent-encoded,
// after the first "?" of the URL (http://eval.test/?<expression>) and returns String(result).
// An exception becomes "throw:" followed by the error's name (Error objects: "throw:TypeError")
// or by the thrown value itself (timeRange throws a plain string), so that one throwing row is
// reported as one mismatch instead of failing the whole table.
function FindProxyForURL(url, host) {
    var start = url.indexOf("?");
    var expression = start < 0 ? "" : decodeURIComponent(url.substring(start + 1));
    try {
        return String(eval(expression));
    } catch (e) {
        return "throw:" + ((e instanceof Error) ? e.name : String(e));
    }
}
