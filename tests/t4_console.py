"""The web console in a real browser: headless Chromium (Debian's chromium and
chromium-driver) driven by Selenium, against a real mount with the console enabled.

The seed's console steps: log in, open a bucket, Security Management → Bucket
Encryption → Edit → SSE-COS (AES256) → Save, upload a file (with the progress
bar's script), see it listed as AES256 and check the mount's
``user.cos.server-side-encryption`` xattr; then the default back to none, a
second upload listed and read as not encrypted, the "not encrypted" filter,
a delete with confirmation, versioning enabled on the Configuration tab,
the Origin Pull document edited (a refused one explained on the page), the
Replication and Inventory pages, ``cosfs stats``, the overview, a bucket
created with the console's form, and logout. Screenshots of each page go to the
test's folder (``COSFS_SCREENSHOTS=DIR`` copies them to DIR, e.g. docs/console).
Skipped with the reason when Chromium, its driver or selenium is missing.
"""

import os
import re
import shutil
import socket
import time

import pytest

from conftest import ENC, PLAIN, fuse_available, mounted, write_config
from t4_api import free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")

pytestmark = [
    pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3"),
    pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                       reason="needs Debian's chromium and chromium-driver "
                              "(apt-get install chromium chromium-driver)"),
]
webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install selenium)")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

SSE_XATTR = "user.cos.server-side-encryption"
ORIGIN_DOC = ("<OriginConfiguration>\n<OriginRule>\n<RulePriority>1</RulePriority>\n"
              "<OriginType>Mirror</OriginType>\n<OriginInfo><HostInfo><HostName>"
              "origin.example.com</HostName></HostInfo></OriginInfo>\n</OriginRule>\n"
              "</OriginConfiguration>")
WAIT = 20


def wait_port(port, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("the console did not listen on %d" % port)
            time.sleep(0.05)


@pytest.fixture
def console_mount(tmp_path):
    port = free_port()
    config = write_config(str(tmp_path / "fs"), extra="console:\n  enabled: true\n"
                                                      "  listen: 127.0.0.1:%d\n" % port)
    for m in mounted(config):
        wait_port(port)
        m.console = "http://127.0.0.1:%d" % port
        yield m


@pytest.fixture
def browser(tmp_path):
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900", "--user-data-dir=%s" % (tmp_path / "chromium")):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


class Shots:
    def __init__(self, driver, folder):
        self.driver, self.folder = driver, folder
        os.makedirs(folder, exist_ok=True)
        self.copy_to = os.environ.get("COSFS_SCREENSHOTS")

    def __call__(self, name):
        path = os.path.join(self.folder, name + ".png")
        self.driver.save_screenshot(path)
        if self.copy_to:
            os.makedirs(self.copy_to, exist_ok=True)
            shutil.copy(path, os.path.join(self.copy_to, name + ".png"))


def row_sse(driver, key):
    row = WebDriverWait(driver, WAIT).until(
        EC.presence_of_element_located((By.CSS_SELECTOR, 'tr[data-key="%s"]' % key)))
    return row.find_element(By.CSS_SELECTOR, "td.sse").text


def set_default(driver, wait, choice):
    driver.find_element(By.ID, "tab-encryption").click()
    wait.until(EC.element_to_be_clickable((By.ID, "edit"))).click()
    driver.find_element(By.ID, "alg-" + choice).click()
    driver.find_element(By.ID, "save").click()
    return wait.until(EC.presence_of_element_located((By.ID, "current-encryption"))).text


def upload(driver, wait, path):
    driver.find_element(By.LINK_TEXT, "Files").click()
    wait.until(EC.presence_of_element_located((By.ID, "upload-files"))).send_keys(path)
    driver.find_element(By.ID, "upload-button").click()


def test_seed_console_steps_in_chromium(console_mount, browser, tmp_path):
    from cosfs import credentials
    m, driver = console_mount, browser
    cred = credentials.add(os.path.join(m.store, "credentials"))
    shot = Shots(driver, str(tmp_path / "screenshots"))
    wait = WebDriverWait(driver, WAIT)

    driver.get(m.console + "/")
    wait.until(EC.presence_of_element_located((By.ID, "secret_id"))).send_keys(cred.secret_id)
    driver.find_element(By.ID, "secret_key").send_keys(cred.secret_key)
    shot("login")
    driver.find_element(By.ID, "login").click()
    table = wait.until(EC.presence_of_element_located((By.ID, "buckets")))
    assert PLAIN in table.text and ENC in table.text
    assert cred.secret_key not in driver.page_source
    shot("buckets")

    # open the bucket; Security Management -> Bucket Encryption -> Edit -> AES256 -> Save
    driver.find_element(By.LINK_TEXT, PLAIN).click()
    wait.until(EC.presence_of_element_located((By.ID, "objects")))
    driver.find_element(By.ID, "tab-encryption").click()
    assert wait.until(EC.presence_of_element_located((By.ID, "current-encryption"))).text \
        == "none"
    wait.until(EC.element_to_be_clickable((By.ID, "edit"))).click()
    shot("bucket-encryption-edit")
    driver.find_element(By.ID, "alg-AES256").click()
    driver.find_element(By.ID, "save").click()
    assert wait.until(EC.presence_of_element_located((By.ID, "current-encryption"))).text \
        == "AES256"
    shot("bucket-encryption")
    assert m.cli("bucket-encryption", "--method", "get", os.path.join(m.mnt, PLAIN)).stdout \
        .count("AES256") == 1

    # upload a file: listed as AES256, and the mount says so
    src = tmp_path / "report.txt"
    src.write_bytes(b"quarterly numbers\n" * 1000)
    upload(driver, wait, str(src))
    assert row_sse(driver, "report.txt") == "AES256"
    shot("files")
    on_mount = os.path.join(m.mnt, PLAIN, "report.txt")
    assert os.getxattr(on_mount, SSE_XATTR) == b"AES256"
    with open(on_mount, "rb") as f:
        assert f.read() == src.read_bytes()

    # default back to none: the next upload is not encrypted, the first keeps AES256
    assert set_default(driver, wait, "none") == "none"
    src2 = tmp_path / "notes.txt"
    src2.write_bytes(b"plain notes\n")
    upload(driver, wait, str(src2))
    assert row_sse(driver, "notes.txt") == "none"
    assert row_sse(driver, "report.txt") == "AES256"
    with pytest.raises(OSError):
        os.getxattr(os.path.join(m.mnt, PLAIN, "notes.txt"), SSE_XATTR)
    assert os.getxattr(on_mount, SSE_XATTR) == b"AES256"

    # the "not encrypted" filter, then a delete with confirmation
    driver.find_element(By.ID, "filter-plain").click()
    wait.until(EC.presence_of_element_located((By.ID, "filter-all")))
    keys = [r.get_attribute("data-key")
            for r in driver.find_elements(By.CSS_SELECTOR, "tr[data-key]")]
    assert keys == ["notes.txt"]
    shot("files-not-encrypted")
    driver.find_element(By.CSS_SELECTOR, 'tr[data-key="notes.txt"] a.delete').click()
    wait.until(EC.element_to_be_clickable((By.ID, "confirm")))
    shot("delete-confirm")
    driver.find_element(By.ID, "confirm").click()
    wait.until(EC.presence_of_element_located((By.ID, "objects")))
    assert not os.path.exists(os.path.join(m.mnt, PLAIN, "notes.txt"))

    # Configuration: the documents, and versioning switched on
    driver.find_element(By.LINK_TEXT, "Configuration").click()
    wait.until(EC.element_to_be_clickable((By.ID, "versioning-Enabled"))).click()
    form = driver.find_element(By.ID, "versioning-form")
    driver.find_element(By.ID, "save-versioning").click()
    wait.until(EC.staleness_of(form))
    assert wait.until(EC.presence_of_element_located((By.ID, "versioning-status"))).text \
        == "Enabled"
    shot("configuration")

    # Origin Pull: the document viewed, edited in the textarea (a refused rule explained on
    # the page, the text kept), saved, and the same record on the mount
    driver.find_element(By.ID, "tab-origin").click()
    assert wait.until(EC.presence_of_element_located((By.ID, "document-text"))).text \
        == "Not configured."
    driver.find_element(By.ID, "edit-document").click()
    area = wait.until(EC.presence_of_element_located((By.ID, "document")))
    area.clear()
    area.send_keys(ORIGIN_DOC.replace("Mirror", "Proxy"))
    driver.find_element(By.ID, "save-document").click()
    error = wait.until(EC.presence_of_element_located((By.ID, "document-error")))
    assert "MalformedXML" in error.text or "InvalidArgument" in error.text, error.text
    area = driver.find_element(By.ID, "document")
    assert "Proxy" in area.get_attribute("value")
    shot("origin-edit-error")
    area.clear()
    area.send_keys(ORIGIN_DOC)
    shot("origin-edit")
    driver.find_element(By.ID, "save-document").click()
    shown = wait.until(EC.presence_of_element_located((By.ID, "document-text")))
    assert "origin.example.com" in shown.text and "Saved." in driver.page_source
    shot("origin")
    assert b"origin.example.com" in os.getxattr(os.path.join(m.mnt, PLAIN),
                                                "user.cos.bucket-origin")
    # Replication and Inventory: the documents and their status
    driver.find_element(By.ID, "tab-replication").click()
    assert wait.until(EC.presence_of_element_located((By.ID, "queued-for-bucket"))).text == "0"
    assert driver.find_element(By.ID, "failed-versions").text == "0"
    shot("replication")
    driver.find_element(By.ID, "tab-inventory").click()
    wait.until(EC.presence_of_element_located((By.ID, "inventory-form")))
    shot("inventory")

    # the metrics of the running daemon, as `cosfs stats` shows them
    stats = m.cli("stats", m.config).stdout
    assert re.search(r"^cosfs_bucket_objects\{algorithm=AES256,bucket=%s\} +1$" % PLAIN,
                     stats, re.M), stats
    # FUSE requests by operation with latency (the reads and xattrs above went through
    # the mount), and resolver decisions by source (the console's uploads)
    assert re.search(r"^cosfs_fuse_request_seconds_count\{operation=getxattr\} +[1-9]\d*$",
                     stats, re.M), stats
    assert re.search(r"^cosfs_fuse_request_seconds_mean\{operation=read\} +[\d.e-]+$",
                     stats, re.M), stats
    assert re.search(r"^cosfs_resolver_decisions_total\{algorithm=AES256,"
                     r"source=bucket-default\} +[1-9]\d*$", stats, re.M), stats
    assert "cosfs_bytes_sealed_total{algorithm=AES256}" in stats
    assert "cosfs_replication_queued" in stats and "cosfs_garbage_blobs" in stats
    assert "# TYPE cosfs_reads_total counter" in m.cli("stats", "--raw", m.config).stdout

    # the dashboard counts the encrypted object; logout ends the session
    driver.find_element(By.LINK_TEXT, "Buckets").click()
    wait.until(EC.presence_of_element_located((By.ID, "enc-title")))
    shot("overview")

    # create a bucket with the console's form: name (rules explained as you type), region,
    # default encryption; it is on the mount at once, with that default
    name = "console-%s" % PLAIN.rsplit("-", 1)[1]
    field = driver.find_element(By.ID, "bucket-name")
    field.send_keys("Photos")
    rules = driver.find_element(By.ID, "name-rules")
    wait.until(lambda d: "must end with -APPID" in rules.text)
    assert "bad" in rules.get_attribute("class")
    field.clear()
    field.send_keys(name)
    wait.until(lambda d: "bad" not in rules.get_attribute("class"))
    Select(driver.find_element(By.ID, "bucket-region")).select_by_visible_text("ap-guangzhou")
    Select(driver.find_element(By.ID, "bucket-encryption")).select_by_value("AES256")
    shot("bucket-create")
    driver.find_element(By.ID, "create-button").click()
    wait.until(EC.presence_of_element_located((By.ID, "objects")))
    assert name in driver.title
    assert os.path.isdir(os.path.join(m.mnt, name))
    assert b"AES256" in os.getxattr(os.path.join(m.mnt, name), "user.cos.bucket-encryption")
    driver.find_element(By.ID, "tab-encryption").click()
    assert wait.until(EC.presence_of_element_located((By.ID, "current-encryption"))).text \
        == "AES256"
    driver.find_element(By.LINK_TEXT, "Buckets").click()
    assert name in wait.until(EC.presence_of_element_located((By.ID, "buckets"))).text
    driver.find_element(By.ID, "logout").click()
    wait.until(EC.presence_of_element_located((By.ID, "secret_id")))
    driver.get(m.console + "/b/%s/" % PLAIN)
    assert wait.until(EC.presence_of_element_located((By.ID, "secret_id")))
