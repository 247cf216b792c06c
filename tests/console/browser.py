"""Drives weir's web console in headless Chromium (Debian's chromium and chromium-driver,
Selenium from the tests' venv) against a running pipeline; cli/tests/console.rs starts the
pipeline and runs this script.

    browser.py --port P --token T --out DIR --axe tests/console/axe/axe.min.js

Prints one JSON object (what it saw, the screenshots, the accessibility findings) as its last
line; exits non-zero with a message when a check fails.
"""

import argparse
import json
import os
import sys
import tempfile
import time

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

XSS = "window.__pwned"


def browser(profile):
    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("WEIR_CHROMIUM", "/usr/bin/chromium")
    for flag in [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        f"--user-data-dir={profile}",
    ]:
        options.add_argument(flag)
    service = Service(os.environ.get("WEIR_CHROMEDRIVER", "/usr/bin/chromedriver"))
    return webdriver.Chrome(options=options, service=service)


def wait(driver, what, check, timeout=30):
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: check(d))
    except TimeoutException:
        shot = os.path.join(ARGS.out, "failed.png")
        driver.save_screenshot(shot)
        fail(f"timed out waiting for {what} (screenshot {shot})")


def fail(message):
    print(f"FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def texts(driver, css):
    """The text of every element `css` selects, read at one moment (the page redraws)."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0])).map((e) => e.textContent)", css
    )


def text(driver, css):
    found = texts(driver, css)
    return found[0] if found else ""


def tab(driver, name):
    driver.find_element(By.ID, f"tab-{name}").click()


def click(driver, css):
    """Clicks `css`, found again if the page redrew it between finding and clicking (tables
    are rebuilt as their data refreshes)."""
    for attempt in range(5):
        try:
            driver.find_element(By.CSS_SELECTOR, css).click()
            return
        except StaleElementReferenceException:
            if attempt == 4:
                raise
            time.sleep(0.2)


def not_pwned(driver, where):
    if driver.execute_script(f"return {XSS} === 1"):
        fail(f"user data ran as code in the page ({where})")


def axe(driver, source, where):
    driver.execute_script(source)
    result = driver.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        axe.run(document, {resultTypes: ['violations']})
          .then((r) => done(r.violations.map((v) => ({id: v.id, impact: v.impact, help: v.help,
             nodes: v.nodes.slice(0, 3).map((n) => n.target.join(' '))}))))
          .catch((e) => done([{id: 'axe-error', impact: 'critical', help: String(e), nodes: []}]));
        """
    )
    return [dict(v, where=where) for v in result]


def main():
    out = ARGS.out
    os.makedirs(out, exist_ok=True)
    base = f"http://127.0.0.1:{ARGS.port}/"
    axe_source = open(ARGS.axe, encoding="utf-8").read()
    seen = {"screenshots": [], "violations": []}
    shots = seen["screenshots"]

    def shot(driver, name):
        path = os.path.join(out, name + ".png")
        driver.save_screenshot(path)
        shots.append(path)

    with tempfile.TemporaryDirectory(prefix="weir-console-chromium-") as profile:
        driver = browser(profile)
        driver.set_script_timeout(60)
        try:
            # without the token: the sign-in form, nothing of the pipeline
            driver.get(base)
            wait(driver, "the sign-in form", lambda d: d.find_elements(By.ID, "token"))
            body = driver.find_element(By.TAG_NAME, "body").text
            if ARGS.pipeline in body or driver.find_elements(By.ID, "tabs"):
                fail("the console was shown without the token")
            seen["violations"] += axe(driver, axe_source, "sign-in")
            shot(driver, "0-sign-in")
            # a wrong token is refused
            driver.find_element(By.ID, "token").send_keys("wrong" + Keys.ENTER)
            wait(driver, "the refusal", lambda d: "not right" in text(d, "[role=alert]"))
            # the right one signs in (a cookie from then on)
            driver.find_element(By.ID, "token").send_keys(ARGS.token + Keys.ENTER)
            wait(driver, "the console", lambda d: d.find_elements(By.ID, "tabs"))
            seen["title"] = driver.title

            # overview: a count that changes
            def events(d):
                t = text(d, "#events-total").replace(",", "")
                return int(t) if t.isdigit() else None

            first = wait(driver, "the events count", events)
            second = wait(driver, "the events count to change", lambda d: (events(d) or 0) > first and events(d))
            seen["events"] = [first, second]
            wait(driver, "the pipeline graph", lambda d: d.find_elements(By.CSS_SELECTOR, "#graph svg g.node"))
            seen["graph_nodes"] = texts(driver, "#graph svg g.node text:first-of-type")
            wait(driver, "the checkpoint age", lambda d: "age" in text(d, "#checkpoint"))
            wait(driver, "the ready state", lambda d: text(d, "#ready-state") in ("ready", "not ready"))
            time.sleep(1.5)  # a few chart points
            shot(driver, "1-overview")
            seen["violations"] += axe(driver, axe_source, "overview")

            # sources: every partition
            tab(driver, "sources")
            rows = wait(
                driver,
                "the partitions",
                lambda d: len(texts(d, "#sources-table tbody tr")) >= 2 and texts(d, "#sources-table tbody tr"),
            )
            seen["partitions"] = rows
            click(driver, "#sources-table th button.sort")
            wait(driver, "a sorted column", lambda d: d.find_elements(By.CSS_SELECTOR, "#sources-table th[aria-sort]"))
            shot(driver, "2-sources")
            seen["violations"] += axe(driver, axe_source, "sources")

            # windows and views: counts, open windows live, a key lookup with hostile text
            tab(driver, "tables")
            wait(driver, "the row counts", lambda d: "rows" in text(d, "[id$=-count]") and "…" not in text(d, "[id$=-count]"))
            wait(driver, "open windows live", lambda d: "live" in text(d, "[id$=-open-status]"))
            # more windows than a browser opens connections to one host: at most 3 followed
            # live, and every window's counts still load
            wait(
                driver,
                "every window's row count",
                lambda d: len([t for t in texts(d, "[id$=-count]") if t.startswith("rows")]) >= ARGS.windows,
            )
            live_streams = 0
            for _ in range(6):
                live_streams = max(live_streams, driver.execute_script("return streams.size"))
                time.sleep(0.5)
            if "not followed live" not in " ".join(texts(driver, "[id$=-open-status]")):
                fail("no window is marked as not followed live")
            driver.find_element(By.ID, "t-win_f-follow").click()
            wait(driver, "the chosen window live", lambda d: text(d, "#t-win_f-open-status").startswith("live"))
            live_streams = max(live_streams, driver.execute_script("return streams.size"))
            seen["live_streams"] = live_streams
            seen["followed_after_choice"] = driver.execute_script("return followed[followed.length - 1]")
            key = driver.find_element(By.CSS_SELECTOR, f"#t-{ARGS.lookup_view}-lookup input")
            key.send_keys(ARGS.lookup_key + Keys.ENTER)
            found = wait(
                driver,
                "the looked-up key",
                lambda d: ARGS.lookup_key in text(d, f"#t-{ARGS.lookup_view}-lookup-result tbody") and True,
            )
            seen["lookup"] = text(driver, f"#t-{ARGS.lookup_view}-lookup-result")
            not_pwned(driver, "key lookup")
            shot(driver, "3-windows-and-views")
            driver.execute_script(
                "document.getElementById(arguments[0]).scrollIntoView()", f"t-{ARGS.lookup_view}-lookup"
            )
            shot(driver, "3b-key-lookup")
            seen["violations"] += axe(driver, axe_source, "windows and views")

            # dead letters: the bad line's error, its raw text as text
            tab(driver, "dead")
            wait(driver, "a dead letter", lambda d: texts(d, "#dead-list article"))
            wait(driver, "the code filter's choices", lambda d: ARGS.dead_code in texts(d, "#dead-code option"))
            # the choices are rebuilt when a new code appears: pick again if the option went stale
            for attempt in range(5):
                try:
                    Select(driver.find_element(By.ID, "dead-code")).select_by_value(ARGS.dead_code)
                    break
                except StaleElementReferenceException:
                    if attempt == 4:
                        raise
                    time.sleep(0.2)
            wait(
                driver,
                "the code filter",
                lambda d: texts(d, "#dead-list article code.code")
                and all(c == ARGS.dead_code for c in texts(d, "#dead-list article code.code")),
            )
            seen["dead_letter_codes"] = sorted(set(texts(driver, "#dead-code option")))
            raws = texts(driver, "#dead-list pre.raw")
            if not any(ARGS.dead_raw in r for r in raws):
                fail(f"the raw bad line is not shown as text: {raws[:3]}")
            seen["dead_letter_message"] = text(driver, "#dead-list article p.message")
            if driver.find_elements(By.CSS_SELECTOR, "#dead-list script, #dead-list img, main img"):
                fail("a raw dead letter became markup")
            not_pwned(driver, "dead letters")
            shot(driver, "4-dead-letters")
            seen["violations"] += axe(driver, axe_source, "dead letters")

            # SQL: a query's rows, then an error with its code
            tab(driver, "sql")
            wait(driver, "the table list", lambda d: "weir_status" in text(d, "#schema"))
            box = driver.find_element(By.ID, "sql-text")
            box.clear()
            box.send_keys(ARGS.query)
            driver.find_element(By.ID, "sql-run").click()
            wait(driver, "the query's rows", lambda d: d.find_elements(By.CSS_SELECTOR, "#sql-result tbody tr"))
            seen["sql_rows"] = len(texts(driver, "#sql-result tbody tr"))
            seen["sql_info"] = text(driver, "#sql-info")
            if driver.find_element(By.ID, "sql-csv").get_attribute("disabled") is not None:
                fail("CSV download not offered after a result")
            csv = driver.execute_script("return csvText(lastResult)")
            if len(csv.strip().split("\r\n")) != seen["sql_rows"] + 1:
                fail(f"the CSV download does not hold the result: {csv!r}")
            seen["csv_head"] = csv.split("\r\n")[0]
            # text a spreadsheet would run as a formula is prefixed with '; numbers are kept
            formulas = driver.execute_script(
                """return csvText({columns: ['a', 'n'], rows: [
                  {a: '=1+1', n: -5}, {a: '@x', n: 1}, {a: '\\tx', n: 2}, {a: '-y', n: 3}, {a: '+"q"', n: 4}]})"""
            )
            seen["csv_formulas"] = formulas.split("\r\n", 1)[1].rstrip("\r\n")
            arrow = driver.execute_async_script(
                """
                const done = arguments[arguments.length - 1];
                sql(lastResult.query, true)
                  .then(async (b) => done([b.type, Array.from(new Uint8Array(await b.arrayBuffer()).slice(0, 4))]))
                  .catch((e) => done(['error', String(e)]));
                """
            )
            # an Arrow IPC stream starts with a message's continuation marker
            if arrow[1] != [255, 255, 255, 255]:
                fail(f"the Arrow download is not an Arrow IPC stream: {arrow}")
            seen["arrow"] = arrow[0]
            shot(driver, "5-sql")
            seen["violations"] += axe(driver, axe_source, "sql")
            box.clear()
            box.send_keys("SELECT no_such_column FROM weir_status")
            box.send_keys(Keys.CONTROL + Keys.ENTER)
            wait(driver, "the error", lambda d: "sql_error" in text(d, "#sql-error"))
            seen["sql_error"] = text(driver, "#sql-error")
            shot(driver, "6-sql-error")
            not_pwned(driver, "the end")

            # a 401 reloads the page once; another right after shows a message, not a loop
            stub = """window.__marker = 1;
                window.fetch = () => Promise.resolve(new Response('{}', {status: 401}));"""
            driver.execute_script("sessionStorage.removeItem(RELOADED);" + stub)
            wait(
                driver,
                "the reload after a 401",
                lambda d: d.execute_script("return window.__marker") is None and d.find_elements(By.ID, "tabs"),
            )
            reloads = 1
            driver.execute_script(stub)
            wait(driver, "the signed-out message", lambda d: "Signed out" in text(d, "#status-line"))
            time.sleep(3)
            if driver.execute_script("return window.__marker") is None:
                reloads += 1
            seen["reloads_on_401"] = reloads
            seen["signed_out"] = text(driver, "#status-line")
            shot(driver, "7-signed-out")

            # signing out ends the session on the server: its cookie, put back, opens nothing
            name = f"weir_console_{ARGS.port}"
            old = driver.get_cookie(name)
            if not old or not old.get("httpOnly"):
                fail(f"no HttpOnly session cookie {name}: {old}")
            driver.find_element(By.CSS_SELECTOR, "#logout button").click()
            wait(driver, "the sign-in form after signing out", lambda d: d.find_elements(By.ID, "token"))
            if driver.get_cookie(name):
                fail("the cookie outlived signing out")
            driver.add_cookie({k: old[k] for k in ("name", "value", "path", "httpOnly") if k in old})
            driver.get(base)
            wait(driver, "the sign-in form for a revoked session", lambda d: d.find_elements(By.ID, "token"))
            if driver.find_elements(By.ID, "tabs"):
                fail("a revoked session still opens the console")
            seen["revoked"] = True
            logs = [
                e for e in driver.get_log("browser") if e.get("level") == "SEVERE" and "favicon" not in e.get("message", "")
            ]
            seen["console_errors"] = [e["message"] for e in logs]
        finally:
            driver.quit()
    bad = [v for v in seen["violations"] if v["impact"] in ("serious", "critical")]
    print(json.dumps(seen))
    if bad:
        fail(f"accessibility: {len(bad)} serious or critical finding(s): {json.dumps(bad)}")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--axe", required=True)
    p.add_argument("--pipeline", required=True)
    p.add_argument("--query", required=True)
    p.add_argument("--lookup-view", required=True)
    p.add_argument("--lookup-key", required=True)
    p.add_argument("--dead-code", required=True)
    p.add_argument("--dead-raw", required=True)
    p.add_argument("--windows", type=int, default=1)
    ARGS = p.parse_args()
    main()
