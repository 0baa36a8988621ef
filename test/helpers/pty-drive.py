# Drives a command in a pseudo-terminal, as a person at a keyboard would (used by test/chat*.test.ts).
# argv[1]: JSON {"cmd": [...], "cwd": "...", "steps": [{"send": "text", "prompts": n | "text": s | "grow": bytes, "timeout": s}]}
# Each step sends its text, then waits until the output holds n prompts ("> "), holds the text, or
# has grown by that many bytes. Prints JSON {"ok": [per step], "status": exit code, "out": output}.
import os, pty, sys, json, time, select
spec = json.loads(sys.argv[1])
if spec.get('cwd'): os.chdir(spec['cwd'])
pid, fd = pty.fork()
if pid == 0:
    os.execvp(spec['cmd'][0], spec['cmd'])
out = b''
def pump(pred, timeout):
    global out
    end = time.time() + timeout
    while time.time() < end:
        if pred(out): return True
        r, _, _ = select.select([fd], [], [], 0.05)
        if r:
            try: data = os.read(fd, 65536)
            except OSError: return pred(out)
            if not data: return pred(out)
            out += data
    return pred(out)
log = []
for step in spec['steps']:
    if 'send' in step:
        os.write(fd, step['send'].encode())
    ok = True
    if 'prompts' in step:
        n = step['prompts']
        ok = pump(lambda o: o.count(b'> ') >= n, step.get('timeout', 30))
    if 'text' in step:
        t = step['text'].encode()
        ok = pump(lambda o: t in o, step.get('timeout', 30))
    if 'grow' in step:
        base = len(out)
        ok = pump(lambda o: len(o) >= base + step['grow'], step.get('timeout', 30))
    log.append(ok)
    if not ok: break
# wait for exit
status = None
end = time.time() + 15
while time.time() < end:
    pump(lambda o: False, 0.1)
    p, st = os.waitpid(pid, os.WNOHANG)
    if p == pid:
        status = os.waitstatus_to_exitcode(st); break
if status is None:
    os.kill(pid, 9); os.waitpid(pid, 0)
print(json.dumps({'ok': log, 'status': status, 'out': out.decode('utf8', 'replace')}))
