// cosfs console: upload progress and the bucket name hint. Pages work without it.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  var upload = document.getElementById("upload");
  if (upload && window.XMLHttpRequest && window.FormData) {
    upload.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var bar = document.getElementById("upload-progress");
      var status = document.getElementById("upload-status");
      var button = document.getElementById("upload-button");
      var xhr = new XMLHttpRequest();
      xhr.open("POST", upload.action);
      bar.hidden = false;
      bar.value = 0;
      button.disabled = true;
      status.textContent = "Uploading…";
      xhr.upload.addEventListener("progress", function (e) {
        if (e.lengthComputable) {
          bar.value = Math.round(100 * e.loaded / e.total);
        }
      });
      xhr.addEventListener("load", function () {
        if (xhr.status >= 200 && xhr.status < 300) {
          bar.value = 100;
          status.textContent = "Uploaded.";
          window.location.assign(xhr.responseURL || window.location.href);
        } else {
          button.disabled = false;
          var doc = new DOMParser().parseFromString(xhr.responseText, "text/html");
          var msg = doc.querySelector(".error");
          status.textContent = "Upload failed: " + (msg ? msg.textContent : xhr.status);
        }
      });
      xhr.addEventListener("error", function () {
        button.disabled = false;
        status.textContent = "Upload failed: the connection was lost.";
      });
      xhr.send(new FormData(upload));
    });
  }
  var name = document.getElementById("bucket-name");
  var rules = document.getElementById("name-rules");
  if (name && rules) {
    var original = rules.textContent;
    name.addEventListener("input", function () {
      var v = name.value;
      var problem = "";
      var m = /^(.*)-(\d+)$/.exec(v);
      if (!v) {
        problem = "";
      } else if (!m) {
        problem = "The name must end with -APPID (your account's digits).";
      } else if (!/^[a-z0-9][a-z0-9-]*$/.test(m[1]) || /-$/.test(m[1])) {
        problem = "Use lower-case letters, digits and hyphens, not at either end.";
      }
      rules.textContent = problem || original;
      rules.className = problem ? "hint bad" : "hint";
    });
  }
});
