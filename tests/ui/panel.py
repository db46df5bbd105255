"""Drives the control panel in headless Chromium (Debian's chromium, through Playwright)
against a running Sluice seeded by tests/it/ui.rs.

Usage: python panel.py BASE_URL SCREENSHOT_PATH
Checks: the streams and their counts appear (dead letters by stage); a stream opens to
its schema and the DDL of its table, with its treated personal fields, its recent loads
and its rows per day (a replay adds a load); dead letters filter by time; a dead letter opens with its error and a
payload that would be HTML is shown as text (no script runs); a replay started from the
panel reaches 100 % and completes; a pulled source runs, pauses and resumes; the
transforms' graph is drawn, a schedule pauses and resumes, and a flow started from the
panel is followed task by task to completion.
"""
import sys

from playwright.sync_api import expect, sync_playwright

base, screenshot = sys.argv[1], sys.argv[2]
dialogs = []

with sync_playwright() as p:
    browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(base + "/ui/")

    # Streams, with their tables and queue bounds (counters are this process's).
    row = page.locator("#streams tbody tr[data-stream=reading]")
    expect(row).to_be_visible()
    expect(row.locator("td").nth(1)).to_have_text("reading")
    expect(row.locator("td").nth(3)).to_contain_text("0 / 50000")
    expect(page.locator("#streams tbody tr")).to_have_count(4)
    expect(row.locator("td").nth(4)).to_have_text("ok")
    expect(row.locator("td").nth(6)).to_have_text("4")
    expect(row.locator("td").nth(7)).to_have_text("parse 1, validate 3")
    expect(row.locator("svg.spark")).to_have_count(1)

    # A stream opens to its schema and the DDL of its table.
    row.click()
    expect(page.locator("#schema-stream")).to_contain_text("reading")
    expect(page.locator("#schema-ddl")).to_contain_text('CREATE TABLE IF NOT EXISTS "reading"')
    expect(page.locator("#schema-json")).to_contain_text('"sensor"')
    expect(page.locator("#schema-privacy")).to_be_hidden()
    # Its one load so far, and today's counts: 1 row in 1 load, 4 dead letters.
    loads = page.locator("#loads tbody tr")
    expect(loads).to_have_count(1)
    expect(loads.nth(0).locator("td").nth(1)).to_have_text("1")
    expect(loads.nth(0).locator("td").nth(2)).to_have_text("http")
    expect(page.locator("#loads-watermark")).to_have_text("watermark " + loads.nth(0).locator("td").nth(0).inner_text())
    day = page.locator("#daily tbody tr")
    expect(day).to_have_count(1)
    expect(day.nth(0).locator("td").nth(1)).to_have_text("1")
    expect(day.nth(0).locator("td").nth(3)).to_have_text("4")

    # A stream that treats personal fields shows each treatment beside the DDL.
    page.locator("#streams tbody tr[data-stream=member]").click()
    expect(page.locator("#schema-ddl")).to_contain_text('CREATE TABLE IF NOT EXISTS "member"')
    treated = page.locator("#schema-privacy tbody tr")
    expect(treated).to_have_count(2)
    expect(treated.nth(0)).to_contain_text("/email")
    expect(treated.nth(0)).to_contain_text("hash")
    expect(treated.nth(0)).to_contain_text("column email")
    expect(treated.nth(1)).to_contain_text("/phones/*/number")
    expect(treated.nth(1)).to_contain_text("mask")
    row.click()
    expect(page.locator("#schema-privacy")).to_be_hidden()

    # Dead letters filtered by the time they were received.
    page.fill("#dl-until", "2000-01-01T00:00:00Z")
    page.click("#dl-filter button[type=submit]")
    expect(page.locator("#dead-letters tbody tr")).to_have_count(0)
    page.fill("#dl-until", "")
    page.fill("#dl-since", "2000-01-01T00:00:00Z")
    page.click("#dl-filter button[type=submit]")

    # The dead letters: the injected one is text, and opening one shows its error.
    expect(page.locator("#dead-letters tbody tr")).to_have_count(4)
    page.locator("#dead-letters tbody tr", has_text="parse").first.click()
    expect(page.locator("#dl-payload")).to_contain_text("<img src=x onerror=alert(1)>")
    assert page.locator("#dl-payload img").count() == 0, "the payload became HTML"
    page.locator("#dead-letters tbody tr", has_text="validate").first.click()
    expect(page.locator("#dl-error")).to_contain_text("/value")
    expect(page.locator("#dl-payload mark")).to_contain_text('"value"')

    # A replay of the stream from the panel, followed to the end.
    page.select_option("#replay-stream", "reading")
    page.click("#replay-start")
    expect(page.locator("#job-state")).to_have_text("completed", timeout=30000)
    expect(page.locator("#job-percent")).to_have_text("100 %")
    expect(page.locator("#job-result")).to_contain_text("3 replayed, 1 still failing")
    # (The scheduled transform ran a flow at start-up too.)
    replays = page.locator("#jobs tbody tr", has_text="replay")
    expect(replays).to_have_count(1)
    expect(replays.first).to_contain_text("completed")
    # The dead letters list is reloaded: only the one that still fails is left.
    expect(page.locator("#dead-letters tbody tr")).to_have_count(1)
    # The replayed rows are a load of their own, newest first; the day counts them.
    row.click()
    expect(loads).to_have_count(2)
    expect(loads.nth(0).locator("td").nth(1)).to_have_text("3")
    expect(loads.nth(0).locator("td").nth(2)).to_have_text("replay")
    expect(day.nth(0).locator("td").nth(1)).to_have_text("4")
    expect(day.nth(0).locator("td").nth(2)).to_have_text("2")
    expect(day.nth(0).locator("td").nth(3)).to_have_text("1")

    # A pulled source, run, paused and resumed from the panel.
    source = page.locator("#sources tbody tr[data-source=logs_csv]")
    expect(source).to_be_visible()
    expect(source.locator("td").nth(1)).to_have_text("app_log")
    expect(source.locator("td").nth(3)).to_have_text("0 file(s) loaded")
    source.locator("button", has_text="Run").click()
    expect(source.locator("td").nth(5)).to_contain_text("completed", timeout=30000)
    expect(source.locator("td").nth(3)).to_have_text("1 file(s) loaded")
    expect(source.locator("td").nth(4)).to_have_text("2")
    source.locator("button", has_text="Pause").click()
    expect(source.locator("td").nth(2)).to_have_text("paused")
    source.locator("button", has_text="Resume").click()
    expect(source.locator("td").nth(2)).to_have_text("idle")

    # The transforms' graph: the stream, then the chain of two transforms.
    graph = page.locator("#flow-graph")
    expect(graph.locator("g[data-node]")).to_have_count(3)
    expect(graph.locator("g[data-node=reading]")).to_contain_text("reading (stream)")
    expect(graph.locator("line")).to_have_count(2)
    expect(graph.locator("line[data-edge='reading_by_sensor→sensor_summary']")).to_have_count(1)
    chained = page.locator("#transforms tbody tr[data-transform=sensor_summary]")
    expect(chained.locator("td").nth(1)).to_have_text("full refresh")
    expect(page.locator("#transforms tbody tr[data-transform=reading_by_sensor] td").nth(1)).to_have_text("incremental")
    # Its schedule paused and resumed.
    chained.locator("button", has_text="Pause").click()
    expect(chained.locator("td").nth(3)).to_have_text("paused")
    chained.locator("button", has_text="Resume").click()
    expect(chained.locator("td").nth(3)).not_to_have_text("paused")
    # A flow of every transform, started here and followed task by task to the end.
    page.click("#flow-all")
    expect(page.locator("#flow-state")).to_have_text("completed", timeout=30000)
    tasks = page.locator("#flow-tasks tbody tr")
    expect(tasks).to_have_count(2)
    expect(page.locator("#flow-tasks tbody tr[data-task=reading_by_sensor] td").nth(3)).to_have_text("completed")
    expect(page.locator("#flow-tasks tbody tr[data-task=sensor_summary] td").nth(3)).to_have_text("completed")
    expect(page.locator("#flow-tasks tbody tr[data-task=sensor_summary] td").nth(2)).to_have_text("reading_by_sensor")
    expect(graph.locator("g[data-node=sensor_summary]")).to_have_attribute("data-state", "completed")
    expect(page.locator("#transforms tbody tr[data-transform=reading_by_sensor] td").nth(5)).to_contain_text("completed")

    page.screenshot(path=screenshot, full_page=True)
    browser.close()

assert not dialogs, f"a dialog opened (script injection): {dialogs}"
assert not errors, f"page errors: {errors}"
print("panel ok")
