import NIOCore
import Testing

@testable import PortcullisProxy

/// `serve --pac`: which requests get the served document, and the document's responses.
@Suite struct ServedDocumentTests {
    typealias Machine = ProxyConnectionStateMachineTests.Machine

    static func machine(serving: Bool) -> Machine {
        var settings = ProxyConnectionStateMachineTests.settings
        settings.servesDocuments = serving
        var machine = Machine(settings: settings, now: .uptimeNanoseconds(0))
        machine.connectionActive(now: ProxyConnectionStateMachineTests.start)
        return machine
    }

    static func head(_ request: String, serving: Bool = true) throws -> Machine.Action {
        var machine = Self.machine(serving: serving)
        return machine.requestHead(
            try ProxyConnectionStateMachineTests.record(request),
            now: ProxyConnectionStateMachineTests.start
        )
    }

    @Test(arguments: [
        "GET /proxy.pac HTTP/1.1\r\nHost: p\r\n\r\n",
        "GET /wpad.dat HTTP/1.1\r\nHost: p\r\n\r\n",
        "HEAD /proxy.pac HTTP/1.1\r\nHost: p\r\n\r\n",
        "GET /proxy.pac?v=2 HTTP/1.0\r\n\r\n",
    ])
    func servedPathsAreServed(request: String) throws {
        guard case .serveDocument = try Self.head(request) else {
            Issue.record("\(request) is not served")
            return
        }
    }

    @Test(arguments: [
        // Other paths and methods, and the served paths when nothing is served: the 400 every
        // origin-form request gets from a forward proxy.
        ("GET /other.pac HTTP/1.1\r\nHost: p\r\n\r\n", true),
        ("GET /proxy.pac/ HTTP/1.1\r\nHost: p\r\n\r\n", true),
        ("GET /PROXY.PAC HTTP/1.1\r\nHost: p\r\n\r\n", true),
        ("POST /proxy.pac HTTP/1.1\r\nHost: p\r\nContent-Length: 0\r\n\r\n", true),
        ("GET /proxy.pac HTTP/1.1\r\nHost: p\r\n\r\n", false),
    ])
    func everythingElseIsABadRequest(request: String, serving: Bool) throws {
        guard case .respond(let response, _, _, _, _) = try Self.head(request, serving: serving) else {
            Issue.record("\(request) is not refused")
            return
        }
        #expect(response.status == .badRequest)
    }

    @Test func anAbsoluteFormRequestForTheSamePathStillGoesThroughTheGate() throws {
        guard case .runGate = try Self.head("GET http://p/proxy.pac HTTP/1.1\r\nHost: p\r\n\r\n") else {
            Issue.record("not gated")
            return
        }
    }

    let document = ServedDocument(
        bytes: Array("function FindProxyForURL(u, h) { return \"DIRECT\"; }".utf8),
        etag: "\"abc\""
    )

    func wire(_ response: ProxyResponse) -> String {
        String(buffer: response.serialized(httpMinorVersion: 1, close: false, allocator: ByteBufferAllocator()))
    }

    @Test func aGetGetsTheFileWithItsTypeAndTag() {
        let text = self.wire(self.document.response(headOnly: false, ifNoneMatch: []))
        #expect(
            text
                == "HTTP/1.1 200 OK\r\nETag: \"abc\"\r\nContent-Type: application/x-ns-proxy-autoconfig\r\nContent-Length: 51\r\nCache-Control: no-cache\r\n\r\nfunction FindProxyForURL(u, h) { return \"DIRECT\"; }"
        )
    }

    @Test func aHeadGetsTheHeadersOnly() {
        let text = self.wire(self.document.response(headOnly: true, ifNoneMatch: []))
        #expect(text.hasSuffix("Content-Length: 51\r\nCache-Control: no-cache\r\n\r\n"))
    }

    @Test(arguments: [["\"abc\""], ["\"x\", \"abc\""], ["\"x\"", "W/\"abc\""], ["*"]])
    func aMatchingTagGets304(values: [String]) {
        let response = self.document.response(headOnly: false, ifNoneMatch: values)
        #expect(response.status == .notModified)
        #expect(self.wire(response) == "HTTP/1.1 304 Not Modified\r\nETag: \"abc\"\r\nCache-Control: no-cache\r\n\r\n")
    }

    @Test(arguments: [["\"abd\""], ["abc"], [""]])
    func anotherTagGetsTheFile(values: [String]) {
        #expect(self.document.response(headOnly: false, ifNoneMatch: values).status == .ok)
    }
}
