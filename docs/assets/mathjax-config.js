// MathJax 3 for pymdownx.arithmatex (generic mode), served from the site itself (no CDN).
window.MathJax = {
  tex: {inlineMath: [["\\(", "\\)"]], displayMath: [["\\[", "\\]"]], processEscapes: true, processEnvironments: true},
  options: {ignoreHtmlClass: ".*|", processHtmlClass: "arithmatex"},
  chtml: {fontURL: new URL("mathjax/output/chtml/fonts/woff-v2", document.currentScript.src).href}
};
