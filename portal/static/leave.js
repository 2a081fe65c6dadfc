// Follow the page's "continue" link at once; without scripts the link is there to click.
document.addEventListener("DOMContentLoaded", function () {
  var link = document.getElementById("continue-link");
  if (link) {
    window.location.replace(link.href);
  }
});
