#!/usr/bin/env python3
"""WebHDFS test server with fault injection, built on the Python standard library.

It follows the Apache Hadoop WebHDFS REST documentation closely enough for the
persistence storage tests: a NameNode port and a DataNode port on 127.0.0.1,
the two-step CREATE and OPEN (307 redirect from the NameNode to the DataNode,
then 201 Created or 200 OK from the DataNode), GETFILESTATUS, LISTSTATUS,
MKDIRS, RENAME with HDFS rename/2 semantics ({"boolean": false} when the
source is missing or the destination exists), DELETE, GETHOMEDIRECTORY, the
JSON shapes of the documentation, and RemoteException error bodies with the
status codes of Hadoop's ExceptionHandler. Files live in a real directory.

When ready it prints {"namenode": N, "datanode": D, "standby": S|null,
"pid": P} as one line on standard output, and writes the same JSON to
--port-file when given. Every WebHDFS request is appended to --log as one JSON
line with role, method, op, path, query, status, fault and byte count.

Faults are a JSON list of rules, given with --faults FILE at start or sent at
run time to the NameNode's control endpoint:
  PUT /control/faults     replace the rules with the JSON list in the body
  POST /control/faults    append the rules in the body
  GET /control/faults     return the rules still armed
  DELETE /control/faults  remove every rule
  GET /control/idle       wait (at most 10 s) until no WebHDFS request is in
                          progress, so that the log is complete when read
A rule is an object with these keys:
  op       WebHDFS operation it applies to, such as "CREATE", or "*"
  role     "namenode", "datanode" or "any"; the default is "datanode" for the
           byte-level actions and "namenode" for the others
  path     substring that the HDFS path must contain (optional)
  skip     matching requests to let through before the rule fires (default 0)
  times    how often it fires, -1 for always (default 1)
  action   one of
    error              respond with "status" (default 500) and a RemoteException
                       of class "exception" (default RuntimeException)
    drop               close the connection without a response; with
                       "perform": true the operation happens first
    drop_after_bytes   DataNode CREATE: store the first "bytes" bytes of the
                       body, then reset the connection, leaving a partial file
                       under lease; DataNode OPEN: send the headers and
                       "bytes" bytes, then close the connection (with a TCP
                       reset when "reset" is true, which may discard bytes
                       still in flight)
    stall_after_bytes  DataNode OPEN: send "bytes" bytes, then pause for
                       "seconds" before closing
    delay              wait "seconds" before handling the request normally
    rename_false       RENAME returns {"boolean": false}; with "perform": true
                       the rename happens first
An interrupted upload leaves its path under a lease for --lease-seconds, so a
new CREATE of that path gets 403 AlreadyBeingCreatedException, as on HDFS.

The server stops on SIGTERM or SIGINT, when the process given by --parent-pid
exits, or after --max-lifetime seconds.
"""

import argparse
import json
import os
import posixpath
import shutil
import signal
import socket
import struct
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHUNK = 64 * 1024
RPC_ADDRESS = "127.0.0.1:8020"
DEFAULT_BLOCK_SIZE = 134217728
MAX_FAULT_SECONDS = 30.0

JAVA_CLASSES = {
    "AccessControlException": "org.apache.hadoop.security.AccessControlException",
    "AlreadyBeingCreatedException": "org.apache.hadoop.hdfs.protocol.AlreadyBeingCreatedException",
    "FileAlreadyExistsException": "org.apache.hadoop.fs.FileAlreadyExistsException",
    "FileNotFoundException": "java.io.FileNotFoundException",
    "IllegalArgumentException": "java.lang.IllegalArgumentException",
    "InvalidToken": "org.apache.hadoop.security.token.SecretManager$InvalidToken",
    "IOException": "java.io.IOException",
    "ParentNotDirectoryException": "org.apache.hadoop.fs.ParentNotDirectoryException",
    "PathIsNotEmptyDirectoryException": "org.apache.hadoop.fs.PathIsNotEmptyDirectoryException",
    "RetriableException": "org.apache.hadoop.ipc.RetriableException",
    "RuntimeException": "java.lang.RuntimeException",
    "SafeModeException": "org.apache.hadoop.hdfs.server.namenode.SafeModeException",
    "SecurityException": "java.lang.SecurityException",
    "StandbyException": "org.apache.hadoop.ipc.StandbyException",
    "UnsupportedOperationException": "java.lang.UnsupportedOperationException",
}

# Operations by HTTP method, as in Hadoop's GetOpParam, PutOpParam, PostOpParam
# and DeleteOpParam. Only some are implemented; the rest get 400.
OPS_BY_METHOD = {
    "GET": ("OPEN", "GETFILESTATUS", "LISTSTATUS", "LISTSTATUS_BATCH", "GETCONTENTSUMMARY",
            "GETFILECHECKSUM", "GETHOMEDIRECTORY", "GETDELEGATIONTOKEN", "GETXATTRS", "GETACLSTATUS"),
    "PUT": ("CREATE", "MKDIRS", "CREATESYMLINK", "RENAME", "SETREPLICATION", "SETOWNER",
            "SETPERMISSION", "SETTIMES", "RENEWDELEGATIONTOKEN", "CANCELDELEGATIONTOKEN"),
    "POST": ("APPEND", "CONCAT", "TRUNCATE"),
    "DELETE": ("DELETE",),
}
OP_ENUMS = {"GET": "GetOpParam", "PUT": "PutOpParam", "POST": "PostOpParam", "DELETE": "DeleteOpParam"}
BYTE_LEVEL_ACTIONS = ("drop_after_bytes", "stall_after_bytes")
ACTIONS = ("error", "drop", "delay", "rename_false") + BYTE_LEVEL_ACTIONS


class RemoteError(Exception):
    """An HDFS exception, sent as a RemoteException JSON body."""

    def __init__(self, status, exception, message):
        super().__init__(message)
        self.status = status
        self.exception = exception
        self.message = message

    def body(self):
        return {"RemoteException": {
            "exception": self.exception,
            "javaClassName": JAVA_CLASSES.get(self.exception, "java.io.IOException"),
            "message": self.message,
        }}


class PlainError(Exception):
    """An error that a servlet filter sends as an HTML page instead of JSON."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


class ConnectionDropped(Exception):
    """The handler cut the connection on purpose; nothing more is sent."""


def bad_parameter(name, value, reason):
    return RemoteError(400, "IllegalArgumentException",
                       'Invalid value for webhdfs parameter "%s": %s' % (name, reason if reason else value))


def parse_boolean(query, name, default):
    value = query.get(name)
    if value is None or value == "":
        return default
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise bad_parameter(name, value, 'Failed to parse "%s" to Boolean.' % value)


def parse_long(query, name, default, minimum):
    value = query.get(name)
    if value is None or value == "" or value == "null":
        return default
    try:
        number = int(value)
    except ValueError:
        raise bad_parameter(name, value, 'Failed to parse "%s" as a radix-10 long integer.' % value)
    if number < minimum:
        raise bad_parameter(name, value, "%s = %d < %d" % (name, number, minimum))
    return number


def check_permission(query):
    value = query.get("permission")
    if value is None or value == "":
        return None
    try:
        mode = int(value, 8)
    except ValueError:
        raise bad_parameter("permission", value, 'Failed to parse "%s" as a radix-8 short integer.' % value)
    if mode < 0 or mode > 0o1777:
        raise bad_parameter("permission", value, "permission = %o > 1777" % mode)
    return "%o" % mode


class Faults:
    """The armed fault rules; thread-safe."""

    def __init__(self):
        self.lock = threading.Lock()
        self.rules = []

    @staticmethod
    def validate(rules):
        if not isinstance(rules, list):
            raise ValueError("faults must be a JSON list of rule objects")
        for rule in rules:
            if not isinstance(rule, dict) or "op" not in rule or rule.get("action") not in ACTIONS:
                raise ValueError("each fault needs an op and an action from %s: %r" % (", ".join(ACTIONS), rule))
            role = rule.get("role")
            if role not in (None, "namenode", "datanode", "any"):
                raise ValueError("role must be namenode, datanode or any: %r" % rule)
        return [dict(rule, op=rule["op"].upper()) for rule in rules]

    def replace(self, rules):
        rules = self.validate(rules)
        with self.lock:
            self.rules = rules

    def extend(self, rules):
        rules = self.validate(rules)
        with self.lock:
            self.rules.extend(rules)

    def snapshot(self):
        with self.lock:
            return [dict(rule) for rule in self.rules]

    def match(self, role, op, path):
        """Returns the first rule that fires for this request and counts it."""
        with self.lock:
            for rule in self.rules:
                rule_role = rule.get("role") or (
                    "datanode" if rule["action"] in BYTE_LEVEL_ACTIONS else "namenode")
                if rule_role not in ("any", role) or rule["op"] not in ("*", op):
                    continue
                if rule.get("path") and rule["path"] not in path:
                    continue
                if rule.get("skip", 0) > 0:
                    rule["skip"] -= 1
                    continue
                times = rule.get("times", 1)
                if times == 0:
                    continue
                if times > 0:
                    rule["times"] = times - 1
                return dict(rule)
        return None


class Namespace:
    """The file system: a backing directory plus owner and permission metadata."""

    def __init__(self, root, lease_seconds):
        self.root = os.path.realpath(root)
        self.lock = threading.RLock()
        self.metadata = {}
        self.leases = {}
        self.lease_seconds = lease_seconds
        self.next_holder = 1

    def local(self, path):
        return os.path.join(self.root, path.lstrip("/")) if path != "/" else self.root

    def exists(self, path):
        return os.path.lexists(self.local(path))

    def is_dir(self, path):
        return os.path.isdir(self.local(path))

    def check_parents(self, path):
        """Raises ParentNotDirectoryException when an ancestor of path is a file."""
        parent = posixpath.dirname(path)
        while parent not in ("", "/"):
            if os.path.exists(self.local(parent)) and not self.is_dir(parent):
                raise RemoteError(403, "ParentNotDirectoryException", "%s (is not a directory)" % parent)
            parent = posixpath.dirname(parent)

    def make_dirs(self, path, user, permission):
        self.check_parents(path)
        if self.exists(path) and not self.is_dir(path):
            raise RemoteError(403, "FileAlreadyExistsException", "Path is not a directory: %s" % path)
        missing = []
        current = path
        while current != "/" and not self.exists(current):
            missing.append(current)
            current = posixpath.dirname(current)
        os.makedirs(self.local(path), exist_ok=True)
        for created in missing:
            self.metadata[created] = {"owner": user, "permission": permission or "755"}

    def lease_holder(self, path):
        expiry = self.leases.get(path)
        if expiry is None:
            return None
        if time.monotonic() >= expiry[0]:
            del self.leases[path]
            return None
        return expiry[1]

    def add_lease(self, path):
        holder = "DFSClient_NONMAPREDUCE_%d_1" % self.next_holder
        self.next_holder += 1
        self.leases[path] = (time.monotonic() + self.lease_seconds, holder)

    def move_metadata(self, source, target):
        for table in (self.metadata, self.leases):
            for key in list(table):
                if key == source or key.startswith(source + "/"):
                    table[target + key[len(source):]] = table.pop(key)

    def drop_metadata(self, path):
        for table in (self.metadata, self.leases):
            for key in list(table):
                if key == path or key.startswith(path + "/"):
                    del table[key]

    def file_status(self, path, suffix):
        info = os.stat(self.local(path))
        is_dir = os.path.isdir(self.local(path))
        meta = self.metadata.get(path, {})
        status = {
            "accessTime": 0 if is_dir else int(info.st_atime * 1000),
            "blockSize": 0 if is_dir else DEFAULT_BLOCK_SIZE,
            "childrenNum": len(os.listdir(self.local(path))) if is_dir else 0,
            "fileId": info.st_ino,
            "group": "supergroup",
            "length": 0 if is_dir else info.st_size,
            "modificationTime": int(info.st_mtime * 1000),
            "owner": meta.get("owner", "hdfs"),
            "pathSuffix": suffix,
            "permission": meta.get("permission", "755" if is_dir else "644"),
            "replication": 0 if is_dir else 3,
            "storagePolicy": 0,
            "type": "DIRECTORY" if is_dir else "FILE",
        }
        return status


def normalize_hdfs_path(raw):
    path = urllib.parse.unquote(raw) or "/"
    if not path.startswith("/"):
        raise RemoteError(400, "IllegalArgumentException", "Invalid path name %s" % path)
    components = [c for c in path.split("/") if c]
    if any(c in (".", "..") or ":" in c for c in components):
        raise RemoteError(400, "IllegalArgumentException", "Invalid path name %s" % path)
    return "/" + "/".join(components)


class Server:
    """Shared state of the NameNode, DataNode and standby NameNode handlers."""

    def __init__(self, args):
        self.namespace = Namespace(args.root, args.lease_seconds)
        self.faults = Faults()
        self.token = args.delegation_token
        self.require_user = args.require_user
        self.require_csrf = args.require_csrf
        self.verbose = args.verbose
        self.log_lock = threading.Lock()
        self.log_path = args.log
        self.sequence = 0
        self.datanode_port = None
        self.in_progress = 0
        self.idle = threading.Condition()

    def begin_request(self):
        with self.idle:
            self.in_progress += 1

    def end_request(self):
        with self.idle:
            self.in_progress -= 1
            self.idle.notify_all()

    def wait_idle(self, timeout):
        with self.idle:
            return self.idle.wait_for(lambda: self.in_progress == 0, timeout)

    def log(self, entry):
        with self.log_lock:
            self.sequence += 1
            entry["seq"] = self.sequence
            if self.log_path:
                with open(self.log_path, "a", encoding="utf-8") as log:
                    log.write(json.dumps(entry, sort_keys=True) + "\n")
        if self.verbose:
            print(json.dumps(entry, sort_keys=True), file=sys.stderr, flush=True)


class Handler(BaseHTTPRequestHandler):
    """Common request plumbing: parsing, authentication, faults, responses and the log."""

    protocol_version = "HTTP/1.1"
    role = "namenode"
    server_state = None

    def log_message(self, format, *args):
        if self.server_state.verbose:
            super().log_message(format, *args)

    def handle_one_request(self):
        # A connection cut on purpose leaves nothing to flush.
        try:
            super().handle_one_request()
        except (OSError, ValueError):
            self.close_connection = True

    def finish(self):
        try:
            super().finish()
        except (OSError, ValueError):
            pass

    def do_GET(self):
        self.dispatch("GET")

    def do_PUT(self):
        self.dispatch("PUT")

    def do_POST(self):
        self.dispatch("POST")

    def do_DELETE(self):
        self.dispatch("DELETE")

    # Responses.

    def declared_body(self):
        return int(self.headers.get("Content-Length") or 0) > 0 or \
            "chunked" in (self.headers.get("Transfer-Encoding") or "").lower()

    def send_bytes(self, status, body, content_type, headers=()):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        if self.declared_body() and not self.body_consumed:
            # An unread request body would be taken for the next request.
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)
        self.status = status

    def send_json(self, status, document):
        self.send_bytes(status, json.dumps(document).encode(), "application/json")

    def send_remote_error(self, error):
        self.send_json(error.status, error.body())

    def end_connection(self):
        """Closes the socket after every byte written so far is sent, as a proxy that gives up would."""
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self.close_connection = True
        raise ConnectionDropped()

    def reset_connection(self):
        """Closes the socket with a TCP reset, as a crashed server would."""
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        for stream in (self.rfile, self.wfile):
            try:
                stream.close()
            except (OSError, ValueError):
                pass
        try:
            self.connection.close()
        except OSError:
            pass
        self.close_connection = True
        raise ConnectionDropped()

    # Request handling.

    def dispatch(self, method):
        self.status = 0
        self.body_consumed = False
        self.bytes = 0
        self.fault = None
        parsed = urllib.parse.urlsplit(self.path)
        if parsed.path.startswith("/control/"):
            self.handle_control(method, parsed.path)
            return

        self.server_state.begin_request()
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(parsed.query, keep_blank_values=True).items()}
        op = query.get("op", "").upper()
        path = parsed.path
        try:
            if not parsed.path.startswith("/webhdfs/v1"):
                self.send_bytes(404, b"Not Found\n", "text/plain")
                return
            path = normalize_hdfs_path(parsed.path[len("/webhdfs/v1"):])
            self.check_op(method, op, query)
            self.authenticate(method, query)
            rule = self.server_state.faults.match(self.role, op, path)
            if rule:
                self.fault = rule["action"]
                self.apply_fault_before(rule, method, op, path, query)
            self.handle_op(method, op, path, query, rule)
        except RemoteError as error:
            self.send_remote_error(error)
        except PlainError as error:
            page = "<html><body><h2>HTTP ERROR %d</h2><p>%s</p></body></html>" % (error.status, error.message)
            self.send_bytes(error.status, page.encode(), "text/html")
        except ConnectionDropped:
            self.status = 0
        except (BrokenPipeError, ConnectionResetError):
            self.status = 0
            self.close_connection = True
        except Exception as error:  # noqa: BLE001 - a bug must still produce an HTTP response
            if self.status == 0:
                self.send_remote_error(RemoteError(500, "RuntimeException", repr(error)))
            self.close_connection = True
        finally:
            logged = {k: ("<redacted>" if k == "delegation" else v) for k, v in query.items()}
            self.server_state.log({
                "time": time.time(), "role": self.role, "method": method, "op": op, "path": path,
                "query": logged, "status": self.status, "fault": self.fault, "bytes": self.bytes,
                "csrf": "X-XSRF-HEADER" in self.headers,
            })
            self.server_state.end_request()

    def check_op(self, method, op, query):
        if "op" not in query:
            raise bad_parameter("op", "", "null")
        if op not in OPS_BY_METHOD.get(method, ()):
            raise bad_parameter("op", op, "No enum constant org.apache.hadoop.hdfs.web.resources.%s.Op.%s"
                                % (OP_ENUMS.get(method, "HttpOpParam"), op))

    def authenticate(self, method, query):
        state = self.server_state
        if state.require_csrf and method != "GET" and "X-XSRF-HEADER" not in self.headers:
            # Hadoop's RestCsrfPreventionFilter sends a plain error page.
            raise PlainError(400, "Missing Required Header for CSRF Vulnerability Protection")
        token = query.get("delegation")
        if state.token:
            if token is None:
                raise RemoteError(401, "SecurityException", "Authentication required")
            if token != state.token:
                raise RemoteError(403, "InvalidToken", "token (HDFS_DELEGATION_TOKEN) can't be found in cache")
        elif state.require_user and not query.get("user.name"):
            raise RemoteError(401, "SecurityException", "Authentication required")

    def user(self, query):
        # Hadoop's default static web user when the request names none.
        return query.get("user.name") or "dr.who"

    def apply_fault_before(self, rule, method, op, path, query):
        action = rule["action"]
        if action == "delay":
            time.sleep(min(float(rule.get("seconds", 1.0)), MAX_FAULT_SECONDS))
        elif action == "error":
            exception = rule.get("exception", "RuntimeException")
            message = rule.get("message", "Injected %s for %s %s" % (exception, op, path))
            raise RemoteError(int(rule.get("status", 500)), exception, message)
        elif action == "drop" and not rule.get("perform"):
            self.reset_connection()

    def after_operation(self, rule):
        """Applies a drop that comes after the operation happened."""
        if rule and rule["action"] == "drop" and rule.get("perform"):
            self.reset_connection()

    def handle_op(self, method, op, path, query, rule):
        raise NotImplementedError

    def handle_control(self, method, path):
        self.send_bytes(404, b"Not Found\n", "text/plain")


class NamenodeHandler(Handler):
    role = "namenode"

    def handle_expect_100(self):
        # Like Hadoop's, this NameNode responds to CREATE without reading a
        # body, so it never invites the client to send one.
        return True

    def handle_control(self, method, path):
        state = self.server_state
        if path == "/control/idle" and method == "GET":
            self.send_json(200, {"idle": state.wait_idle(10.0)})
            return
        if path != "/control/faults":
            self.send_bytes(404, b"Not Found\n", "text/plain")
            return
        try:
            if method in ("PUT", "POST"):
                length = int(self.headers.get("Content-Length") or 0)
                rules = json.loads(self.rfile.read(length) or b"[]")
                self.body_consumed = True
                if method == "PUT":
                    state.faults.replace(rules)
                else:
                    state.faults.extend(rules)
            elif method == "DELETE":
                state.faults.replace([])
            self.send_json(200, state.faults.snapshot())
        except ValueError as error:
            self.send_json(400, {"error": str(error)})

    def redirect(self, path, query):
        params = {k: v for k, v in query.items() if k != "noredirect"}
        params["namenoderpcaddress"] = RPC_ADDRESS
        location = "http://127.0.0.1:%d/webhdfs/v1%s?%s" % (
            self.server_state.datanode_port, urllib.parse.quote(path), urllib.parse.urlencode(params))
        if parse_boolean(query, "noredirect", False):
            self.send_json(200, {"Location": location})
        else:
            self.send_bytes(307, b"", "application/octet-stream", [("Location", location)])

    def handle_op(self, method, op, path, query, rule):
        ns = self.server_state.namespace
        handlers = {
            "CREATE": self.op_create, "OPEN": self.op_open, "GETFILESTATUS": self.op_getfilestatus,
            "LISTSTATUS": self.op_liststatus, "MKDIRS": self.op_mkdirs, "RENAME": self.op_rename,
            "DELETE": self.op_delete, "GETHOMEDIRECTORY": self.op_gethomedirectory,
        }
        if op not in handlers:
            raise RemoteError(400, "UnsupportedOperationException",
                              "%s is not supported by this test server" % op)
        with ns.lock:
            handlers[op](ns, path, query, rule)

    def op_create(self, ns, path, query, rule):
        parse_boolean(query, "overwrite", False)
        parse_long(query, "blocksize", None, 1)
        parse_long(query, "replication", None, 1)
        parse_long(query, "buffersize", None, 1)
        check_permission(query)
        self.redirect(path, query)

    def op_open(self, ns, path, query, rule):
        parse_long(query, "offset", 0, 0)
        parse_long(query, "length", None, 0)
        if not ns.exists(path):
            raise RemoteError(404, "FileNotFoundException", "File does not exist: %s" % path)
        if ns.is_dir(path):
            raise RemoteError(404, "FileNotFoundException", "Path is not a file: %s" % path)
        self.redirect(path, query)

    def op_getfilestatus(self, ns, path, query, rule):
        if not ns.exists(path):
            raise RemoteError(404, "FileNotFoundException", "File does not exist: %s" % path)
        self.send_json(200, {"FileStatus": ns.file_status(path, "")})

    def op_liststatus(self, ns, path, query, rule):
        if not ns.exists(path):
            raise RemoteError(404, "FileNotFoundException", "File %s does not exist." % path)
        if ns.is_dir(path):
            names = sorted(os.listdir(ns.local(path)))
            statuses = [ns.file_status(posixpath.join(path, name), name) for name in names]
        else:
            statuses = [ns.file_status(path, "")]
        self.send_json(200, {"FileStatuses": {"FileStatus": statuses}})

    def op_mkdirs(self, ns, path, query, rule):
        permission = check_permission(query)
        ns.make_dirs(path, self.user(query), permission)
        self.send_json(200, {"boolean": True})

    def op_gethomedirectory(self, ns, path, query, rule):
        self.send_json(200, {"Path": "/user/%s" % self.user(query)})

    def op_delete(self, ns, path, query, rule):
        recursive = parse_boolean(query, "recursive", False)
        if path == "/" or not ns.exists(path):
            self.send_json(200, {"boolean": False})
            return
        local = ns.local(path)
        if ns.is_dir(path):
            if os.listdir(local) and not recursive:
                raise RemoteError(403, "PathIsNotEmptyDirectoryException", "`%s is non empty': Directory is not empty"
                                  % path)
            shutil.rmtree(local)
        else:
            os.remove(local)
        ns.drop_metadata(path)
        self.after_operation(rule)
        self.send_json(200, {"boolean": True})

    def rename_target(self, ns, source, destination):
        """The target of HDFS rename/2, or None where it returns false."""
        if source == "/" or not ns.exists(source):
            return None
        if destination == source:
            return source
        if destination.startswith(source + "/"):
            return None
        if ns.exists(destination):
            if not ns.is_dir(destination):
                return None
            destination = posixpath.join(destination, posixpath.basename(source))
            if ns.exists(destination):
                return None
        parent = posixpath.dirname(destination)
        if not ns.exists(parent) or not ns.is_dir(parent):
            return None
        return destination

    def op_rename(self, ns, path, query, rule):
        destination = query.get("destination")
        if not destination:
            raise bad_parameter("destination", "", "null")
        if not destination.startswith("/"):
            raise bad_parameter("destination", destination, "Invalid path name %s" % destination)
        destination = normalize_hdfs_path(destination)
        options = [o for o in query.get("renameoptions", "").split(",") if o and o != "NONE"]
        if any(o != "OVERWRITE" for o in options):
            raise bad_parameter("renameoptions", query["renameoptions"],
                                "No enum constant org.apache.hadoop.fs.Options.Rename.%s" % options[0])
        if options:
            self.rename_overwrite(ns, path, destination)
            self.after_operation(rule)
            self.send_bytes(200, b"", "application/octet-stream")
            return

        fault = rule and rule["action"] == "rename_false"
        target = self.rename_target(ns, path, destination)
        if fault and not rule.get("perform"):
            target = None
        if target is not None and target != path:
            os.rename(ns.local(path), ns.local(target))
            ns.move_metadata(path, target)
        self.after_operation(rule)
        self.send_json(200, {"boolean": target is not None and not fault})

    def rename_overwrite(self, ns, source, destination):
        """HDFS rename/3 with OVERWRITE: replaces a file or an empty directory."""
        if not ns.exists(source):
            raise RemoteError(404, "FileNotFoundException", "rename source %s is not found." % source)
        parent = posixpath.dirname(destination)
        if not ns.exists(parent):
            raise RemoteError(404, "FileNotFoundException", "rename destination parent %s not found." % parent)
        if ns.exists(destination):
            if ns.is_dir(destination) and os.listdir(ns.local(destination)):
                raise RemoteError(403, "IOException", "rename destination directory is not empty: %s"
                                  % destination)
            if ns.is_dir(destination) != ns.is_dir(source):
                raise RemoteError(403, "IOException", "Source %s and destination %s must both be directories"
                                  % (source, destination))
        os.replace(ns.local(source), ns.local(destination))
        ns.drop_metadata(destination)
        ns.move_metadata(source, destination)


class DatanodeHandler(Handler):
    role = "datanode"

    def handle_op(self, method, op, path, query, rule):
        if op == "CREATE":
            self.op_create(path, query, rule)
        elif op == "OPEN":
            self.op_open(path, query, rule)
        else:
            raise RemoteError(400, "IllegalArgumentException", "Invalid operation %s" % op)

    def body_chunks(self):
        """Yields the request body as it arrives; stops early if the client goes away."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            while True:
                line = self.rfile.readline()
                if not line:
                    return
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return
                remaining = size
                while remaining > 0:
                    data = self.rfile.read(min(CHUNK, remaining))
                    if not data:
                        return
                    remaining -= len(data)
                    yield data
                self.rfile.readline()
        else:
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining > 0:
                data = self.rfile.read1(min(CHUNK, remaining))
                if not data:
                    return
                remaining -= len(data)
                yield data

    def op_create(self, path, query, rule):
        state = self.server_state
        ns = state.namespace
        overwrite = parse_boolean(query, "overwrite", False)
        permission = check_permission(query)
        user = self.user(query)
        with ns.lock:
            holder = ns.lease_holder(path)
            if holder:
                raise RemoteError(403, "AlreadyBeingCreatedException",
                                  "Failed to CREATE_FILE %s for DFSClient_NONMAPREDUCE_0_1 on 127.0.0.1 because "
                                  "this file lease is currently owned by %s on 127.0.0.1" % (path, holder))
            if ns.exists(path):
                if ns.is_dir(path):
                    raise RemoteError(403, "FileAlreadyExistsException", "%s already exists as a directory" % path)
                if not overwrite:
                    raise RemoteError(403, "FileAlreadyExistsException",
                                      "%s for client 127.0.0.1 already exists" % path)
            ns.make_dirs(posixpath.dirname(path), user, None)
            ns.metadata[path] = {"owner": user, "permission": permission or "644"}
            # Like HDFS, the file is visible at its name from the start of the upload.
            target = open(ns.local(path), "wb")

        limit = int(rule["bytes"]) if rule and rule["action"] == "drop_after_bytes" else None
        complete = True
        with target:
            expected = int(self.headers.get("Content-Length") or -1)
            for data in self.body_chunks():
                if limit is not None and self.bytes + len(data) >= limit:
                    target.write(data[:limit - self.bytes])
                    self.bytes = limit
                    complete = False
                    break
                target.write(data)
                self.bytes += len(data)
            if expected >= 0 and self.bytes < expected:
                complete = False
        if not complete:
            with ns.lock:
                ns.add_lease(path)
            self.reset_connection()
        self.body_consumed = True
        location = "hdfs://%s%s" % (RPC_ADDRESS, path)
        self.send_bytes(201, b"", "application/octet-stream", [("Location", location)])

    def op_open(self, path, query, rule):
        ns = self.server_state.namespace
        offset = parse_long(query, "offset", 0, 0)
        length = parse_long(query, "length", None, 0)
        with ns.lock:
            if not ns.exists(path):
                raise RemoteError(404, "FileNotFoundException", "File does not exist: %s" % path)
            if ns.is_dir(path):
                raise RemoteError(404, "FileNotFoundException", "Path is not a file: %s" % path)
            size = os.path.getsize(ns.local(path))
            if offset > size:
                raise RemoteError(403, "IOException", "Offset=%d out of the range [0, %d); OPEN, path=%s"
                                  % (offset, size, path))
            source = open(ns.local(path), "rb")
        count = size - offset if length is None else min(size - offset, length)

        limit = None
        if rule and rule["action"] in BYTE_LEVEL_ACTIONS:
            limit = int(rule.get("bytes", 0))
        with source:
            source.seek(offset)
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(count))
            self.send_header("Connection", "close")
            self.close_connection = True
            self.end_headers()
            self.status = 200
            while self.bytes < count:
                wanted = min(CHUNK, count - self.bytes)
                if limit is not None:
                    wanted = min(wanted, limit - self.bytes)
                if wanted <= 0:
                    break
                data = source.read(wanted)
                if not data:
                    break
                self.wfile.write(data)
                self.bytes += len(data)
            self.wfile.flush()
        if limit is not None and self.bytes < count:
            if rule["action"] == "stall_after_bytes":
                time.sleep(min(float(rule.get("seconds", 5.0)), MAX_FAULT_SECONDS))
            if rule.get("reset"):
                self.reset_connection()
            self.end_connection()


class StandbyHandler(Handler):
    """A NameNode in standby state: every operation fails with StandbyException."""

    role = "standby"

    def handle_op(self, method, op, path, query, rule):
        category = "READ" if method == "GET" else "WRITE"
        raise RemoteError(403, "StandbyException", "Operation category %s is not supported in state standby. "
                          "Visit https://s.apache.org/sbnn-error" % category)


def start_server(handler_class, state):
    handler = type(handler_class.__name__, (handler_class,), {"server_state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    return server


def parent_alive(pid):
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return os.getppid() == pid


def write_port_file(path, text):
    temporary = path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as out:
        out.write(text + "\n")
    os.replace(temporary, path)


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="backing directory that contains the HDFS namespace")
    parser.add_argument("--log", help="file that receives one JSON line per WebHDFS request")
    parser.add_argument("--port-file", help="file that receives the ports as JSON once the server is ready")
    parser.add_argument("--faults", help="JSON file with the fault rules to arm at start")
    parser.add_argument("--delegation-token", help="require delegation=TOKEN on every request")
    parser.add_argument("--require-user", action="store_true", help="respond with 401 to requests without user.name")
    parser.add_argument("--require-csrf", action="store_true",
                        help="respond with 400 to requests other than GET that lack the X-XSRF-HEADER header")
    parser.add_argument("--standby", action="store_true",
                        help="also start a NameNode in standby state on a third port")
    parser.add_argument("--lease-seconds", type=float, default=60.0,
                        help="how long an interrupted upload keeps its path under lease (default 60)")
    parser.add_argument("--max-lifetime", type=float, default=900.0,
                        help="seconds after which the server stops by itself (default 900)")
    parser.add_argument("--parent-pid", type=int, help="stop when this process exits")
    parser.add_argument("--verbose", action="store_true", help="print every request on standard error")
    return parser.parse_args()


def main():
    args = parse_arguments()
    os.makedirs(args.root, exist_ok=True)
    state = Server(args)
    if args.faults:
        with open(args.faults, encoding="utf-8") as source:
            state.faults.replace(json.load(source))

    datanode = start_server(DatanodeHandler, state)
    state.datanode_port = datanode.server_address[1]
    namenode = start_server(NamenodeHandler, state)
    standby = start_server(StandbyHandler, state) if args.standby else None
    servers = [s for s in (namenode, datanode, standby) if s]

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    ready = json.dumps({
        "namenode": namenode.server_address[1], "datanode": state.datanode_port,
        "standby": standby.server_address[1] if standby else None, "pid": os.getpid(),
    })
    if args.port_file:
        write_port_file(args.port_file, ready)
    print(ready, flush=True)

    deadline = time.monotonic() + args.max_lifetime
    while not stop.is_set() and time.monotonic() < deadline and parent_alive(args.parent_pid):
        stop.wait(0.2)
    for server in servers:
        server.shutdown()
        server.server_close()


if __name__ == "__main__":
    main()
